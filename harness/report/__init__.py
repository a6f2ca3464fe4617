"""Writers of run results: files (JSON, JUnit) and the console."""
