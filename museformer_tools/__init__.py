"""museformer_tools: what runs after training on a museformer_plugin checkpoint.

Checkpoint reading (``checkpoint.py``), sampling (``sample.py`` is the museformer-sample CLI, ``sampling.py`` its
loop, ``grammar_mask.py`` and ``controls.py`` the masks on the next token), perplexity at several lengths
(``eval_ppl.py``, museformer-eval-ppl) and the results table of run_scripts/compare.sh (``compare_table.py``).
The fairseq plugin (``museformer_plugin``) never imports this package.
"""
