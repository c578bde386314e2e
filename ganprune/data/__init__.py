"""Datasets in the reference aligned/unaligned layouts, and the embedded real-photo demo set."""
