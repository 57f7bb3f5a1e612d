# Settings for `make serve` (the embedded default). Override any of them on the command line,
# e.g. `PORT=9000 make serve` or `make serve WORKDIR=/data/axonseg`.
PORT ?= 8000
# Datastore, retrained weights, Slicer views and training stats live here (git-ignored).
WORKDIR ?= ./work
# Largest accepted upload in MB; larger requests get 413 before anything is written.
MAX_UPLOAD_MB ?= 2048
