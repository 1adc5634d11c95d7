# The two commands of the README. Both install what they need first.
PYTHON := .venv/bin/python

.PHONY: install demo demo-centerpoint test

install:
	bash tools/install.sh

# The main job: built-in KITTI-layout data, a small SECOND trained on it, RD
# pruning, fine-tuning, KittiMetric, dense against pruned (work_dirs/kitti_like)
demo: install
	$(PYTHON) tools/demo.py

# RD pruning of CenterPoint (random weights) calibrated on a real nuScenes frame
demo-centerpoint: install
	$(PYTHON) tools/prune.py configs/centerpoint/rd-weight_centerpoint_voxel02-quick_nus.py \
		--work-dir work_dirs/demo --overwrite

test: install
	$(PYTHON) -m pytest tests --durations=20
