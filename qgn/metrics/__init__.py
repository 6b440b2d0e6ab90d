"""GMNER / MNER / EEG scoring."""
