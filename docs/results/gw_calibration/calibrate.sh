#!/bin/bash
# gw calibration: short compressed runs (8 epochs, ghost phase 2 epochs, 4000 train images, val 2000), ERK 98%
cd "$(dirname "$0")/../../.." && . .venv/bin/activate  # the repository root
common="--model resnet20 --data cifar10 --data-dir ../shared/data --val-split 2000 --train-subset 4000 --epochs 8 --batch-size 128 --lr 0.1 --lr-schedule cosine --weight-decay 5e-4 --mask-method erk --sparsity 0.98 --seed 0 --threads 1 --no-progress --ghost-epochs 2"
for arm in "default" "gw --gw-form relative --gw-lambda 0.05" "gw --gw-form relative --gw-lambda 0.5" "gw --gw-form absolute --gw-lambda 1.0" "gw --gw-form fade"; do
  name=$(echo $arm | tr ' ' '_' | tr -d '-')
  OMP_WAIT_POLICY=PASSIVE anymask train $common --recipe $arm --out runs/gw_calibration/$name
done
