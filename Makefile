# axonseg: two set-up commands, `make serve` and `make test`; both create/update .venv first.
PYTHON ?= python3
VENV ?= .venv
include server_config/embedded.mk
# CPU pins by default; see docs/deployment.md, "GPU install", for CUDA machines.
CONSTRAINTS ?= requirements/constraints-cpu.txt
BIN := $(VENV)/bin

.PHONY: serve test lint weights clean-work

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Re-installs whenever the project's dependency files change.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/activate
	# PIP_CONSTRAINT reaches the build environments too: sam2 (a monailabel dependency, an sdist) builds against
	# the pinned CPU torch on disk, not a CUDA torch downloaded for the build.
	PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) $(BIN)/pip install --upgrade -c $(CONSTRAINTS) -e ".[test]"
	touch $@

serve: $(VENV)/.installed
	@if [ ! -d "$(WORKDIR)/datastore" ]; then \
		mkdir -p "$(WORKDIR)/datastore" && cp sample_data/*.tif sample_data/*.h5 sample_data/*.nrrd "$(WORKDIR)/datastore/" && \
		echo "seeded $(WORKDIR)/datastore with the sample volumes"; fi
	PYTHONPATH=apps/axonseg $(BIN)/python -m lib.jobs.embedded --studies "$(WORKDIR)/datastore" --workdir "$(WORKDIR)" \
		--host 127.0.0.1 --port $(PORT) --conf max_upload_mb $(MAX_UPLOAD_MB) --conf infer_timeout_s $(INFER_TIMEOUT_S) \
		$(if $(AUTH),--conf auth $(AUTH)) $(SERVE_ARGS)

test: $(VENV)/.installed
	$(BIN)/ruff check apps tests benchmarks
	$(BIN)/mypy  # the app's types ([tool.mypy] in pyproject.toml)
	# Two processes, a test file each at a time: most of a server test is waiting on its subprocesses.
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

lint: $(VENV)/.installed
	$(BIN)/ruff check apps tests benchmarks
	$(BIN)/ruff format --check apps tests benchmarks
	$(BIN)/mypy

# Retrain the shipped weights from their recipes on ../shared/data (see apps/axonseg/model/*.md).
weights: $(VENV)/.installed
	for m in synapse membrane axon mitochondria; do \
		PYTHONPATH=apps/axonseg $(BIN)/python -m lib.trainers.cli $$m --data-dir ../shared/data || exit 1; done
	# The candidate recipes trained across microscopes, each with its leave-one-microscope-out runs, then its card.
	for m in membrane-em mitochondria-em; do \
		PYTHONPATH=apps/axonseg $(BIN)/python -m lib.trainers.cli $$m --data-dir ../shared/data || exit 1; \
		for x in $$(PYTHONPATH=apps/axonseg $(BIN)/python -c "from lib.configs.registry import RECIPES; \
			print(*RECIPES['$$m'].recipe.microscopes)"); do \
			PYTHONPATH=apps/axonseg $(BIN)/python -m lib.trainers.cli $$m --leave-out $$x --data-dir ../shared/data \
				|| exit 1; done; \
		PYTHONPATH=apps/axonseg $(BIN)/python -m lib.trainers.cli $$m --card-only --data-dir ../shared/data; done

clean-work:
	rm -rf "$(WORKDIR)"
