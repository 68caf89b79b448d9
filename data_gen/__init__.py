"""data_gen: build model graphs with a known heritage (roots, tasks, fine-tuning, graph folders)."""
