"""The architecture table, the masked LM with its sparse head, loading MLM and task models, cheap CPU dropout."""
