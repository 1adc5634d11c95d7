# The two commands of the README. Both install what they need first.
PYTHON := .venv/bin/python

.PHONY: install demo test

install:
	bash tools/install.sh

demo: install
	$(PYTHON) tools/prune.py configs/centerpoint/rd-weight_centerpoint_voxel02-quick_nus.py \
		--work-dir work_dirs/demo --overwrite

test: install
	$(PYTHON) -m pytest tests
