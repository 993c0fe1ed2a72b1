"""Dataset converters: `python -m data_prep.<name> --src <download> --out <data root>`.

See data_prep/README.md for sources, licences, expected layouts and the common steps.
"""

# the converters of the paper's datasets (module name = dataset name = `data=<name>`)
DATASET_CONVERTERS = ("tissuenet", "deepbacs", "brifiseg", "cellpose", "omnipose", "yeastnet",
                      "yeaz", "dsb2018", "livecell")
# the generic image/label-pairs converter (users' own data, Phase400)
GENERIC_CONVERTER = "pairs"
