"""The command-line apps: each a thin Hydra (or argparse) `main` around a function that reads like a list
of steps: instantiate from config, run library code, write results.

    lnrl-train      lnrl.apps.train       one training run (VFT, AFT, DPO, ...)
    lnrl-eval       lnrl.apps.evaluate    held-out metrics of one model
    lnrl-sample     lnrl.apps.sample      k CoTs per question, graded and profiled
    lnrl-prefs      lnrl.apps.prefs       preference records from sampled groups
    lnrl-refscores  lnrl.apps.refscores   cached reference scores of a group file
    lnrl-pipeline   lnrl.apps.pipeline    the main job (`make demo`): every stage above in order
    lnrl-report     lnrl.apps.report      one table and plots for the runs under a directory
    lnrl-export     lnrl.apps.export      a Lightning checkpoint -> a save_pretrained directory

Library code never imports from here (tests/test_layers.py checks it).
"""

# Hydra's config_path for every app: the lnrl.conf package, found the same way from a source checkout
# (`python -m lnrl.apps.<app>`), a console script and an installed wheel.
CONF = "pkg://lnrl.conf"
