"""`apiary connectivity test`: the scenario table, its selection and report (pure), and the in-endpoint probe."""
