"""A Geneformer fit killed mid-training (SIGKILL) resumes from its last complete checkpoint on retry."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scaling_assets.models import geneformer as gf

pytestmark = pytest.mark.slow  # a Geneformer fit killed in a child process, then resumed

# 6 steps, a checkpoint every 2: the child process is killed right after checkpoint-4 is written.
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import transformers
    from transformers import TrainerCallback
    from scaling_assets.models import geneformer as gf
    from scaling_assets.models.budget import BUDGETS, Budget, GeneformerBudget
    from scaling_assets.data.corpus import Corpus

    BUDGETS["resume"] = Budget("resume", BUDGETS["test"].scvi, GeneformerBudget(max_steps=6, warmup_steps=1,
                                                                            eval_steps=2, eval_max_cells=8))
    kill_at = int(sys.argv[3])

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            # runs after the COMPLETE marker (callbacks run in order, the marker's first)
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    base_init = transformers.Trainer.__init__
    def init(self, *a, **k):  # every Trainer gets the killer callback, after the model's own
        base_init(self, *a, **k)
        self.add_callback(KillAfterSave())
    transformers.Trainer.__init__ = init

    train, val = Corpus(sys.argv[1]), Corpus(sys.argv[2])
    model = gf.GeneformerModel(train.token_dictionary.gene_ids, budget="resume", seed=0, device="cpu")
    report = model.fit(train, val, checkpoint_dir=sys.argv[4])
    print("RESUMED", model.resumed_from_step, "STEPS", report.steps)
""")


def test_killed_fit_resumes_from_the_last_complete_checkpoint(tmp_path):
    from scaling_assets.models.synthetic import simulate_counts
    from scaling_assets.data.corpus import TokenDictionary, build_corpus, gene_nonzero_medians

    src = simulate_counts(120, 30, seed=5)
    med = gene_nonzero_medians(src, rows=np.arange(100))
    td = TokenDictionary(src.var_names)
    build_corpus(src, tmp_path / "train", med, td, rows=np.arange(100))
    build_corpus(src, tmp_path / "val", med, td, rows=np.arange(100, 120))
    ckpt = tmp_path / "ckpt"
    args = [sys.executable, "-c", SCRIPT, str(tmp_path / "train"), str(tmp_path / "val")]

    killed = subprocess.run(args + ["4", str(ckpt)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert gf.latest_complete_checkpoint(ckpt).name == "checkpoint-4"

    retried = subprocess.run(args + ["-1", str(ckpt)], capture_output=True, text=True, timeout=300)
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert "RESUMED 4 STEPS 6" in retried.stdout  # steps 5-6 only, not from zero
