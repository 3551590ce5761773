"""The run layer: configuration presets (:mod:`train.config`), output-folder rules
(:mod:`train.rundir`) and tasks (:mod:`train.tasks`). ``main_density.py`` is the command line over it."""
