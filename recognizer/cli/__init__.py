"""Console scripts: recognizer-train, -eval, -transcribe, -export, -align, -score, -doctor, -lr-find, -sweep-report."""
