"""Commands beside a run: near-duplicate evaluation on labelled pairs, export to the flat layout."""
