"""`python train.py [overrides]`: see conf/train.yaml and the README."""

from cellsam.cli import train_main

if __name__ == "__main__":
    train_main()
