"""What tests share: starting a daemon process, a fake model, driving the scheduler, parity checks."""
