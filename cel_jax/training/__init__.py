"""Training: the loop (train.py) and its parts, one job each: checks (config validation), engine (the
jitted step and all it needs), batches (schedule, placement), resume (start / resume / save), retain_eval
(ε and the epoch-mode dual's passes), metrics_log, mirror (remote work dirs), outcome (summary, report,
export), optim, checkpoint, run_dir, target, feasibility, plots."""
