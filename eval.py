"""`python eval.py [overrides]`: see conf/eval.yaml and the README."""

from cellsam.cli import eval_main

if __name__ == "__main__":
    eval_main()
