"""What a run is asked to do: the suite file's typed shape (`schema`), the validated suite
(`suite`), the parts it names, bound once (`part_spec`), and each case's identity
(`identity`, with the digest of a part's code from `code_hash`).

Imports: `core`, `measure`, `model`, `strategy`.
"""
