"""TOFU / MUSE evaluation: metrics computed as open-unlearning does (`metrics`), logs on disk (`report`)."""
