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

# 2b. the arms chosen on validation images (configs/ensembles/search_validation.sh), on parents 0-2:
#     five-epochs (round 1's choice), pair-15 (round 2's), and tuned-parent-15, the control that pair-15
#     needs: the parent itself tuned as long as a pair-15 child, on the same schedule (one child, random
#     at sparsity 0: every weight kept), so children that beat their parent through 15 more epochs of
#     training are not mistaken for an ensemble effect (its one child trains on both cores). ARM and
#     ARM_FLAGS add one more arm, e.g.
#       ARM=five-epochs-0.03 ARM_FLAGS="--tune-epochs 5 --tune-lr 0.03" bash configs/ensembles/ensembles_cifar10_resnet20.sh
ARMS=(
  "five-epochs|--tune-epochs 5"
  "pair-15|--children 2 --tune-epochs 15"
  "tuned-parent-15|--children 1 --pruning random --sparsity 0 --tune-epochs 15 --threads 2"
)
if [ -n "${ARM:-}" ]; then
  ARMS+=("$ARM|${ARM_FLAGS:-}")
fi
for arm in "${ARMS[@]}"; do
  for seed in 0 1 2; do
    # shellcheck disable=SC2086  # the flags are a list
    ensemble "${arm%%|*}/parent-$seed" "$(parent "$seed")" \
      --config configs/ensembles/ensembles_cifar10_resnet20.toml --workers "$WORKERS" ${arm#*|}
  done
done

# 3. the deep ensemble: the four parents, independently trained
ensemble deep-4 --members "$(parent 0)" "$(parent 1)" "$(parent 2)" "$(parent 3)"

# 4. the report: prune-and-tune with the issue's settings, random halves, each arm above, the deep ensemble
groups=("$KEPT"/runs/anti-random/parent-* "$KEPT"/runs/random-50/parent-*)
for arm in "${ARMS[@]}"; do
  groups+=("$KEPT"/runs/"${arm%%|*}"/parent-*)
done
anymask ensemble-report "${groups[@]}" "$KEPT/runs/deep-4" --out "$KEPT"
