"""Real-model worlds: a pretrained model nobody here wrote, run through the whole product (issue 6)."""
