"""The run layer: configuration presets (:mod:`train.config`) and output-folder rules
(:mod:`train.rundir`). ``main_density.py`` is the command line over it."""
