# `make demo` and `make test` work on a fresh clone: they create .venv and install first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR ?= outputs/demo

.PHONY: install test test-all demo demo-parent demo-parent-pet bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# a plain `torch` requirement would pull a multi-GB CUDA build: take the CPU wheel first
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -m "not slow"

test-all: install
	$(PY) -m pytest

# Five strategies from each bundled demo parent (MACE and PET) on the bundled QM9 demo set,
# then a probe report over all twelve checkpoints (lighter settings than probe.py's defaults,
# so that the whole demo stays within ~10 minutes on 2 CPU cores).
demo: install
	$(PY) train.py -m experiment=demo_scratch,demo_full,demo_head,demo_transfer_full,demo_transfer_head \
		backbone=demo_mace,demo_pet trainer=cpu hydra.sweep.dir=$(DEMO_DIR)
	cat $(DEMO_DIR)/summary.md
	$(PY) probe.py inputs=$(DEMO_DIR) hydra.run.dir=$(DEMO_DIR)/probe max_atoms=1000 \
		reconstruction.nonlinear=false probes.cv=3 'probes.learning_curve=[0.2,1.0]'
	@echo "Probe report: $(DEMO_DIR)/probe/report/report.md"

# Recipe of checkpoints/demo_mace_parent.pt (committed, so `make demo` needs no pretraining).
demo-parent: install
	$(PY) train.py experiment=pretrain_demo trainer=cpu hydra.run.dir=outputs/pretrain_demo
	cp outputs/pretrain_demo/checkpoints/model.pt checkpoints/demo_mace_parent.pt

# Recipe of checkpoints/demo_pet_parent.ckpt: metatrain's own `mtt train` (a real .ckpt, as users bring).
demo-parent-pet: install
	mkdir -p outputs/pretrain_demo_pet
	cd outputs/pretrain_demo_pet && ln -sfn ../../data data && \
		../../$(VENV)/bin/mtt train ../../conf/metatrain/pet_demo_parent.yaml -o demo_pet_parent
	cp outputs/pretrain_demo_pet/demo_pet_parent.ckpt checkpoints/demo_pet_parent.ckpt

bench: install
	$(PY) benchmarks/bench_embed.py

clean:
	rm -rf outputs multirun
