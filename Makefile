# cshealth — the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SPARK_STAMP := $(VENV)/.spark-stamp

# No telemetry from any tool, anywhere.
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test lint bench clean postgres chromium java spark

help:
	@echo "make demo   set up .venv, generate the sample data and run the pipeline on it"
	@echo "make test   set up .venv and run lint + the test suite"
	@echo "make bench  run the speed/memory benchmarks (JSON in benchmarks/results/)"
	@echo "make lint   ruff"
	@echo "make clean  remove generated data, reports and the venv"

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing cshealth (first run: about a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The Spark engine's packages (pyspark, sqlglot): only the tests and `--engine spark` need them.
$(SPARK_STAMP): $(STAMP)
	@echo ">> installing the Spark engine (pyspark, sqlglot; first run: a few minutes)"
	@$(BIN)/python -m pip install -q -e '.[dev,spark]'
	@touch $(SPARK_STAMP)

spark: $(SPARK_STAMP)

demo: $(STAMP)
	@echo ">> 1/9 generating sample data (params.yaml: simulator)"
	$(BIN)/cshealth generate
	@echo ">> 2/9 checking the data against the contract"
	$(BIN)/cshealth check
	@echo ">> 3/9 building point-in-time snapshots (features + labels)"
	$(BIN)/cshealth features
	@echo ">> 4/9 training churn + expansion models, backtest vs baselines, MLflow registry"
	$(BIN)/cshealth train --truth data/truth.parquet
	@echo ">> 5/9 scoring the newest snapshot into the score store"
	$(BIN)/cshealth score
	@echo ">> 6/9 replaying past months out of time (models trained on the data before them)"
	$(BIN)/cshealth replay
	@echo ">> 7/9 drift vs the champion's training data (exit 1 = drift found) and realised accuracy"
	-$(BIN)/cshealth monitor
	@echo ">> 8/9 writing the leadership risk report"
	$(BIN)/cshealth report
	@echo ">> 9/9 starting the scoring service (a fresh API key unless CSHEALTH_API_KEY is set)"
	@KEY=$${CSHEALTH_API_KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))')}; \
	  CSHEALTH_API_KEY=$$KEY $(BIN)/cshealth serve --show-key

lint: $(STAMP)
	$(BIN)/ruff check .

# The store tests need a real PostgreSQL on 127.0.0.1:5432 (installed and started if missing);
# the report test needs a headless Chromium (installed if missing).
postgres:
	@bash .ci/postgres.sh

chromium:
	@bash .ci/chromium.sh

java:
	@bash .ci/java.sh

test: lint postgres chromium java spark wheelhouse
	$(BIN)/python -m pytest

# The portable-model test installs the logged model's declared requirements (exactly
# training.pyfunc.pip_requirements()) into a fresh venv, offline: download them here.
WHEELHOUSE := .cache/wheelhouse
.PHONY: wheelhouse
wheelhouse: $(WHEELHOUSE)/.stamp

$(WHEELHOUSE)/.stamp: pyproject.toml training/pyfunc.py $(STAMP)
	@echo ">> downloading the model's requirements into $(WHEELHOUSE) (first run: a few minutes)"
	@mkdir -p $(WHEELHOUSE)
	@$(BIN)/python -c 'from training.pyfunc import pip_requirements; print(*pip_requirements(), sep="\n")' > $(WHEELHOUSE)/requirements.txt
	@$(BIN)/python -m pip download -q -d $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	@touch $@

bench: $(STAMP) java spark
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_features.py --sizes 10,100 --spark 10
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_serving.py

clean:
	rm -rf data reports benchmarks/results $(VENV) .pytest_cache .ruff_cache
