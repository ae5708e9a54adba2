#!/usr/bin/env bash
# The wheels a lent H200 machine lacks to run the GPU checks (gpu_check.py, gpu_queue_check.py,
# investigations/gpu_colocation.py): Dagster 1.13.27, scvi-tools 1.5.1, anndata 0.13.4 and what they need beyond the
# machine's image (Python 3.12 with torch, transformers, scikit-learn, h5py, pandas, lightning ...; it
# reaches no package registry). 52 wheels, 26 MB, into the git-ignored .whl; run here, from the repo root:
#     bash benchmarks/tools/device_wheels.sh
# then on the machine (carry .whl):
#     python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
#         && export PYTHONPATH=/tmp/site
# Checked 2026-12-04: in a clean Python 3.12 with the image's packages these import Dagster's daemon,
# scvi and the repository's definitions, and `gpu_queue_check.py --tiny` and `gpu_colocation.py --tiny`
# run through. grpcio and protobuf are carried because grpcio-health-checking 1.81 needs protobuf >= 6.33.5.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl \
  alembic==1.20.1 anndata==0.13.4 annotated-types==0.8.0 antlr4-python3-runtime==4.13.2 \
  array-api-compat==1.16.0 coloredlogs==14.0 dagster==1.13.27 dagster-pipes==1.13.27 \
  dagster-shared==1.13.27 docstring-parser==0.18.0 donfig==0.8.1.post1 fast-array-utils==1.5.1 \
  google-crc32c==1.9.0 grpcio==1.85.3 grpcio-health-checking==1.81.1 humanfriendly==10.0 \
  legacy-api-wrap==1.5 mako==1.4.3 ml-collections==1.1.0 msgspec==0.23.0 mudata==0.4.1 natsort==8.4.0 \
  numcodecs==0.17.1 pathlib-abc==0.5.2 platformdirs==4.14.9 protobuf==6.33.6 pydantic==2.14.4 \
  pydantic-core==2.50.5 pydantic-settings==2.16.3 pynndescent==0.7.0 pyro-api==0.1.2 pyro-ppl==1.9.2 \
  python-dotenv==1.2.4 pytz==2026.6 scanpy==1.12.4 scikit-misc==0.5.3 scverse-misc==0.1.7 \
  scvi-tools==1.5.1 session-info2==0.4.2 sparse==0.19.3 sqlalchemy==2.1.9 structlog==26.1.0 \
  tomli==2.5.0 tomlkit==0.15.3 toposort==1.10 typing-inspection==0.4.5 tzdata==2026.6 \
  umap-learn==0.5.12 universal-pathlib==0.3.10 watchdog==6.0.0 zarr==3.4.2
# docrep (scvi-tools needs it) is published as a source archive only: build its pure-Python wheel here
python3 -m pip wheel -q --no-deps -w .whl docrep==0.3.2
ls .whl | wc -l
du -sh .whl
