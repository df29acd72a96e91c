#!/usr/bin/env bash
# Evidence for prune-and-tune ensembles (docs/ensembles.md), from the repository root:
#   bash configs/ensembles/ensembles_cifar10_resnet20.sh
# Every step is resumable: run it again after an interruption and it finishes what is missing.
# WORKERS (default 2) children train at a time. The parents are the dense teachers of
# configs/teachers_cifar10_resnet20.toml (seeds 0-2), plus seed 3 trained here with the same settings.
set -euo pipefail
WORKERS=${WORKERS:-2}
PARENT_CONFIG=configs/ensembles/ensemble_parent_cifar10_resnet20.toml
TEACHERS=runs/teachers_cifar10_resnet20
TEACHERS_KEPT=docs/results/teachers/runs
OUT=runs/ensembles_cifar10_resnet20
KEPT=docs/results/ensembles

hash_of() {  # the config hash of parent seed $1: the teachers' sweep names its folder by it
  python -c "import sys; from anymask.config import RunConfig, read_config_file
print(RunConfig.from_flat({**read_config_file(sys.argv[1]), 'seed': int(sys.argv[2])}).hash())" \
    "$PARENT_CONFIG" "$1"
}

parent() {  # the parent's run folder: trained here, or committed with its weights (docs/results/teachers)
  local hash
  hash=$(hash_of "$1")
  if [ ! -f "$TEACHERS/$hash/summary.json" ] && [ -f "$TEACHERS_KEPT/$hash/model.safetensors" ]; then
    echo "$TEACHERS_KEPT/$hash"
  else
    echo "$TEACHERS/$hash"
  fi
}

# 1. parents: seeds 0-2 are the teachers' (trained here only if neither folder has them), seed 3 is new;
#    a parent trained here leaves its small files and weights beside the teachers' for a commit
for seed in 0 1 2 3; do
  folder=$(parent "$seed")
  if [ ! -f "$folder/summary.json" ]; then
    resume=$([ -f "$folder/config.json" ] && echo --resume || true)
    anymask train --config "$PARENT_CONFIG" --seed "$seed" --out "$folder" $resume
    mkdir -p "$TEACHERS_KEPT/$(basename "$folder")"
    cp "$folder"/{config.json,metrics.jsonl,summary.json,model.safetensors} "$TEACHERS_KEPT/$(basename "$folder")/"
  fi
done

keep() {  # what a commit needs of one ensemble (ensemble.json, each child's config, metrics, summary)
  local folder=$1 kept="$KEPT/runs/${1#"$OUT"/}"
  mkdir -p "$kept"
  for child in "$folder"/child-*; do
    [ -d "$child" ] || continue
    mkdir -p "$kept/$(basename "$child")"
    cp "$child"/config.json "$child"/metrics.jsonl "$child"/summary.json "$kept/$(basename "$child")/"
  done
  cp "$folder/ensemble.json" "$kept/"  # last: its presence says the kept ensemble is whole
}

ensemble() {  # OUT-relative folder, then anymask ensemble's arguments; skipped when already kept
  local folder="$OUT/$1"
  shift
  if [ -f "$KEPT/runs/${folder#"$OUT"/}/ensemble.json" ]; then
    echo "kept already: $folder"
    return
  fi
  anymask ensemble "$@" --out "$folder"
  keep "$folder"
}

# 2. prune-and-tune: 6 anti-random children of each of parents 0-2, then 6 random-50% children; each
#    ensemble's small files are kept as it finishes, so a session that ends mid-way loses only the one
#    in progress (a run again on a fresh machine skips what is kept)
for seed in 0 1 2; do
  ensemble "anti-random/parent-$seed" "$(parent "$seed")" \
    --config configs/ensembles/ensembles_cifar10_resnet20.toml --workers "$WORKERS"
  ensemble "random-50/parent-$seed" "$(parent "$seed")" \
    --config configs/ensembles/ensembles_cifar10_resnet20.toml --pruning random --sparsity 0.5 \
    --workers "$WORKERS"
done

# 2b. the arm chosen on validation images (configs/ensembles/search_validation.sh), when it is not the
#     evidence's settings: ARM names it, ARM_FLAGS are its flags, e.g.
#       ARM=five-epochs ARM_FLAGS="--tune-epochs 5" bash configs/ensembles/ensembles_cifar10_resnet20.sh
if [ -n "${ARM:-}" ]; then
  for seed in 0 1 2; do
    # shellcheck disable=SC2086  # ARM_FLAGS is a list of flags
    ensemble "$ARM/parent-$seed" "$(parent "$seed")" \
      --config configs/ensembles/ensembles_cifar10_resnet20.toml --workers "$WORKERS" ${ARM_FLAGS:-}
  done
fi

# 3. the deep ensemble: the four parents, independently trained
ensemble deep-4 --members "$(parent 0)" "$(parent 1)" "$(parent 2)" "$(parent 3)"

# 4. the report
anymask ensemble-report "$KEPT"/runs/anti-random/parent-* "$KEPT"/runs/random-50/parent-* \
  ${ARM:+"$KEPT"/runs/"$ARM"/parent-*} "$KEPT/runs/deep-4" --out "$KEPT"
