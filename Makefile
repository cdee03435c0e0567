# Expression-aware self-supervised face pretraining. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# another CUDA build of the pinned torch/torchvision, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_INDEX ?=
TORCH_PINS := $(shell grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"')

DATA ?=
SHARDS ?= shards
CONFIG ?=
ARGS ?=
RUN ?= runs/$(PRESET)
PRESET ?= sslfer
CKPT ?=
PROTOCOL ?=
TASK ?=
REPORT ?=
RUNS ?=
GPUS ?=
NODES ?= 1
GPUS_PER_NODE ?= 8
TASKS_PER_NODE ?= $(if $(filter-out 0,$(GPUS_PER_NODE)),$(GPUS_PER_NODE),1)
CPUS_PER_TASK ?= 8
SBATCH_ARGS ?=
# A SLURM job's options travel in a file under $(1) (NUL-separated, the shell's quoting already applied) and its
# variables in sbatch's environment (--export=ALL): --export=VAR=value would cut a value at its commas
# (timeaug_frames=2,3,4,5,6); the file is kept, so a requeued job reads the same options
JOB_OPTIONS = set -f && opts=( $(ARGS) ) && mkdir -p "$(1)/.slurm" && \
	args_file="$$(cd "$(1)/.slurm" && pwd)/args-$$(date +%Y%m%d-%H%M%S)-$$$$" && printf '%s\0' "$${opts[@]}" > "$$args_file"
# make eval-<dataset>: its data folder is the variable of its name in capitals (AFFECTNET=, FER2013=...) or DATA=
EVAL_DATA = $(or $($(shell echo '$(1)' | tr 'a-z-' 'A-Z_')),$(DATA))

.PHONY: help setup demo shards shards-merge shards-slurm pretrain pretrain-slurm table1 embed report test \
	bench-shards bench-scale bench-train bench-batches bench-eval bench-eval-memory experiment experiment-curve \
	gpu-check gpu-check-shards

help:
	@echo "make demo [DATA=<your clips>]   the whole pipeline on a small synthetic corpus it makes (no dataset, no GPU):"
	@echo "                                sslfer vs simclr vs random; verdict in build/demo/report.md"
	@echo "make test                       run the test suite"
	@echo "make setup [TORCH_INDEX=<url>]  create .venv with the pinned dependencies (and ffmpeg via apt when root);"
	@echo "                                TORCH_INDEX: the wheel index of the torch CUDA build your driver runs (docs/guide.md)"
	@echo "make shards DATA=<corpus> [SHARDS=shards] [CONFIG=configs/shards.toml] [ARGS=\"key=value ...\"]"
	@echo "                                DATA is ONE corpus: <speaker>/<video>/<clip>.mp4, VoxCeleb1 face frames, or a CSV"
	@echo "                                path,speaker[,video] (several trees, e.g. VoxCeleb1 dev + test: one CSV)"
	@echo "make shards-merge SHARDS=<dir>  join the parts of a split run (ARGS=\"part=i/n\")"
	@echo "make shards-slurm DATA=<corpus> SHARDS=<dir> PARTS=<n> [SBATCH_ARGS=\"--partition=...\"]"
	@echo "                                a SLURM job array of n parts, then the merge once every part succeeded"
	@echo "make pretrain SHARDS=<dir> RUN=<runs/name> PRESET=<preset> [CONFIG=<toml>] [ARGS=\"key=value ...\"]"
	@echo "                                presets: simclr mocov2 byol timeaug timeaug-hardneg timeaug-hardneg-cutmix"
	@echo "                                timeaug-faceswap-maskfn timeaug-hardneg-faceswap sslfer official"
	@echo "                                GPUS=<n>: n ranks on this machine (torchrun), one per GPU; rerun to resume"
	@echo "make pretrain-slurm SHARDS=<dir> RUN=<dir> PRESET=<preset> NODES=1 GPUS_PER_NODE=8 [CPUS_PER_TASK=8] [SBATCH_ARGS=\"--partition=...\"]"
	@echo "                                one rank per GPU on each node; at the time limit: checkpoint, exit 75, requeued"
	@echo "make eval-<dataset> CKPT=\"<ckpt ...>\" <DATASET>=<data> (or DATA=<data>)  evaluate with the dataset's paper settings"
	@echo "                                datasets: affectnet (AFFECTNET=<dir>) fer2013 (FER2013=<dir or fer2013.csv>)"
	@echo "                                rafdb (RAFDB=<dir>) lfw (LFW=<dir>) folder (DATA=<class folders>); all, yours"
	@echo "                                included: $(PY) -m eval --help"
	@echo "                                [PROTOCOL=linear|finetune|both] [TASK=expr|va|both] [REPORT=<dir>]"
	@echo "                                [ARGS=\"epochs=... batch_size=... max_images=...\"] (after the paper settings)"
	@echo "make report RUNS=\"<report dirs>\" [REPORT=<file>] [ALLOW_MIXED=1]  one table from several evaluation reports"
	@echo "make embed INPUT=\"<images, folders, videos>\" CKPT=\"<ckpt ...>\" [OUT=embeddings.parquet]"
	@echo "                                embeddings per image / video frame; a labelled folder also gets the map PNG"
	@echo "make table1 SHARDS=<dir> [AFFECTNET= FER2013= RAFDB= LFW=] [PRESETS=\"...\"] [RUNS=runs] [TRAIN_ARGS= EVAL_ARGS=]"
	@echo "                                pretrain and evaluate what is missing (the rest kept), write reports/table1/table1.md;"
	@echo "                                each row is its run's backbone.pt (CHECKPOINT=last, the default), or"
	@echo "                                with CHECKPOINT=best MONITOR=<labelled faces> its checkpoints/best.pt, or with"
	@echo "                                CHECKPOINT=paper the best of its kept checkpoints/epoch-*.pt (the paper's rule)"
	@echo "                                [SLURM=1 NODES=1 GPUS_PER_NODE=8 SBATCH=\"#SBATCH --partition=...\"]: sbatch scripts + submit.sh"
	@echo "make bench-shards               benchmark the batch stage on ../shared/data/talking-faces"
	@echo "make bench-train ARGS=\"--shards <dir>\"  benchmark the trainer's data path (and the GPU step: --what step)"
	@echo "make bench-scale                the batch stage's bookkeeping at VoxCeleb1's size (simulated clips;"
	@echo "                                ARGS=\"--what voxceleb2\": both sizes, every run, the trainer's start-up)"
	@echo "make bench-batches              simulate batch make-up and shuffling at full size (bookkeeping only)"
	@echo "make bench-eval                 benchmark feature extraction, the linear probe and fine-tuning"
	@echo "make bench-eval-memory          peak memory of an AffectNet-size evaluation (simulated images)"
	@echo "make experiment                 Table 1's rows on the real clips of ../shared/data (docs/results.md)"
	@echo "make experiment-curve           SimCLR and sslfer against epochs on those clips: expression and identity"
	@echo "                                at each kept checkpoint (Table 3's shape; docs/results.md)"
	@echo "make gpu-check SHARDS=<dir> [OUT=gpu-check]  on a GPU node (~8 min, no internet or mediapipe needed): the"
	@echo "                                real sslfer step per AMP mode vs the model-only ceiling, region embedding speed,"
	@echo "                                simclr and sslfer for equal minutes; OUT/gpu-check.md (ARGS=--help: options)"
	@echo "make gpu-check-shards [SHARDS=build/gpu-check-shards]  shards under 40 MB from every 5th clip of ../shared/data"
	@echo "options:                        $(PY) -m preprocess build --help; $(PY) -m train --help; $(PY) -m eval --help"
	@echo "your own pieces:                SSLFER_PLUGINS=<modules or .py files> (docs/architecture.md, How to add)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if ! command -v ffmpeg >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q ffmpeg || (apt-get update -q && apt-get install -y -q ffmpeg)) >/dev/null; \
	  else echo "ffmpeg is missing: install it (e.g. sudo apt-get install ffmpeg) and rerun"; exit 1; fi; fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(VENV)/bin/pip install -q --index-url "$(TORCH_INDEX)" $(TORCH_PINS))
	$(VENV)/bin/pip install -q -e '.[test]'
	@$(PY) -c "import torch; print(f'torch {torch.__version__} (CUDA build {torch.version.cuda}); GPUs usable here: {torch.cuda.device_count()}')"
	touch $@

demo: setup
	$(PY) -m eval.demo $(if $(DATA),--data "$(DATA)") $(ARGS)

shards: setup
	@if [ -z "$(DATA)" ]; then echo "usage: make shards DATA=<corpus folder or CSV> [SHARDS=<out>]"; exit 2; fi
	$(PY) -m preprocess build "$(DATA)" "$(SHARDS)" $(if $(CONFIG),--config "$(CONFIG)") $(ARGS)

shards-merge: setup
	$(PY) -m preprocess merge "$(SHARDS)"

shards-slurm: setup
	@if [ -z "$(DATA)" ] || [ -z "$(PARTS)" ]; then echo "usage: make shards-slurm DATA=<corpus> SHARDS=<out> PARTS=<n> [ARGS=...]"; exit 2; fi
	@$(call JOB_OPTIONS,$(SHARDS)) && \
	  jid=$$(DATA="$(DATA)" SHARDS="$(SHARDS)" N="$(PARTS)" ARGS_FILE="$$args_file" \
	    sbatch --parsable --export=ALL --array=0-$$(($(PARTS)-1)) $(SBATCH_ARGS) configs/slurm/shards.sbatch) && \
	  echo "array job $$jid: $(PARTS) parts (options in $$args_file)" && \
	  SHARDS="$(SHARDS)" sbatch --export=ALL --dependency=afterok:$$jid $(SBATCH_ARGS) configs/slurm/shards-merge.sbatch

pretrain: setup
	$(if $(GPUS),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS),$(PY)) -m train "$(SHARDS)" "$(RUN)" \
	  --preset $(PRESET) $(if $(CONFIG),--config "$(CONFIG)") $(ARGS)

pretrain-slurm: setup
	@$(call JOB_OPTIONS,$(RUN)) && \
	  SHARDS="$(SHARDS)" RUN="$(RUN)" PRESET="$(PRESET)" CONFIG="$(CONFIG)" ARGS_FILE="$$args_file" \
	  sbatch --export=ALL --nodes=$(NODES) --ntasks-per-node=$(TASKS_PER_NODE) --cpus-per-task=$(CPUS_PER_TASK) \
	  $(if $(filter-out 0,$(GPUS_PER_NODE)),--gres=gpu:$(GPUS_PER_NODE)) $(SBATCH_ARGS) configs/slurm/pretrain.sbatch

eval-%: setup
	@if [ -z "$(call EVAL_DATA,$*)" ] || [ -z "$(CKPT)" ]; then \
	  echo "usage: make eval-$* CKPT=\"<ckpt ...>\" $(shell echo '$*' | tr 'a-z-' 'A-Z_')=<data> (or DATA=<data>)"; exit 2; fi
	$(PY) -m eval $* "$(call EVAL_DATA,$*)" --paper-settings $(foreach c,$(CKPT),--ckpt "$(c)") \
	  $(if $(REPORT),--report "$(REPORT)") $(if $(PROTOCOL),protocol=$(PROTOCOL)) $(if $(TASK),task=$(TASK)) $(ARGS)

table1: setup
	$(PY) -m eval.table1 --shards "$(SHARDS)" $(if $(AFFECTNET),--affectnet "$(AFFECTNET)") \
	  $(if $(FER2013),--fer2013 "$(FER2013)") $(if $(RAFDB),--rafdb "$(RAFDB)") $(if $(LFW),--lfw "$(LFW)") \
	  $(if $(PRESETS),--presets "$(PRESETS)") $(if $(RUNS),--runs "$(RUNS)") --train "$(TRAIN_ARGS)" --eval "$(EVAL_ARGS)" \
	  $(if $(MONITOR),--monitor "$(MONITOR)") $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	  $(if $(REPORT),--out "$(REPORT)") $(if $(filter 1 yes true,$(SLURM)),--slurm --sbatch "$(SBATCH)" \
	    --nodes $(NODES) --gpus-per-node $(GPUS_PER_NODE) --tasks-per-node $(TASKS_PER_NODE) --cpus-per-task $(CPUS_PER_TASK))

embed: setup
	@if [ -z "$(INPUT)" ] || [ -z "$(CKPT)" ]; then echo "usage: make embed INPUT=\"<images, folders, videos>\" CKPT=\"<ckpt ...>\" [OUT=embeddings.parquet] [ARGS=...]"; exit 2; fi
	$(PY) -m eval embed $(INPUT) $(foreach c,$(CKPT),--ckpt $(c)) --out "$(or $(OUT),embeddings.parquet)" $(ARGS)

report: setup
	$(PY) -m eval report $(RUNS) $(if $(REPORT),--out "$(REPORT)") $(if $(filter 1 yes true,$(ALLOW_MIXED)),--allow-mixed)

test: setup
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench-shards: setup
	$(PY) bench/bench_shards.py $(ARGS)

bench-train: setup
	$(PY) bench/bench_train.py $(ARGS)

bench-scale: setup
	$(PY) bench/bench_scale.py $(ARGS)

bench-batches: setup
	$(PY) bench/bench_batches.py $(ARGS)

bench-eval-memory: setup
	$(PY) bench/bench_eval_memory.py $(ARGS)

bench-eval: setup
	$(PY) bench/bench_eval.py $(ARGS)

experiment: setup
	$(PY) bench/experiment.py $(ARGS)

experiment-curve: setup
	$(PY) bench/experiment_curve.py $(ARGS)

# the GPU node may have no internet for make setup: its own python when there is no .venv; shards of its own
# unless SHARDS= is given (never the default shards/ folder)
CHECK_SHARDS = $(if $(filter command line environment,$(origin SHARDS)),$(SHARDS),build/gpu-check-shards)
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bench/gpu_check.py --shards "$(CHECK_SHARDS)" --out "$(or $(OUT),gpu-check)" $(ARGS)

gpu-check-shards: setup
	$(PY) bench/gpu_check.py --make-shards "$(CHECK_SHARDS)" $(ARGS)
