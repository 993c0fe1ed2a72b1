"""`python predict.py [overrides]`: see conf/predict.yaml and the README."""

from cellsam.cli import predict_main

if __name__ == "__main__":
    predict_main()
