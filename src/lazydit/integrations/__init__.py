"""Optional bridges to third-party libraries; each imports its library only when used."""
