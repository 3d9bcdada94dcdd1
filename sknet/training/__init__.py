"""One rank's training: the loop (`loop`), what stops it (`stopping`), its checkpoints (`checkpoint`), the run
record of its directory (`run_record`), the learning-rate schedule (`lr_schedule`), the MindSpore process setup
(`runtime`) and the step log line (`train_log`)."""
