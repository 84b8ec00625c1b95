"""The kernel every part stands on: storage, the record schema, tasks, the passage table, settings files,
which pip extra a command lacks, and the self-contained plotly page. Imports nothing above it."""
