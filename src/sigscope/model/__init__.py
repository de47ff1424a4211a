"""The vocabulary and the record layout: signals, si_codes, vias, filters, events. No I/O."""
