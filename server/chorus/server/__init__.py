"""The Chorus server: bounded, pseudonymous ingest and differentially private team releases."""
