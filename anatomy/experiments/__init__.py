"""The chapters' experiments: one module per argument the book tests, built on the core of ``anatomy``.

The core (``anatomy.*``) never imports these modules; a chapter imports the one it runs.

=====================  ===========  =================================================================
module                 chapter      argument
=====================  ===========  =================================================================
``families``           1            three families, one mask: what a prefix's states see of a suffix
``entropy``            2            entropy and the chain rule: the chapter's figures, a text's surprisal
``capacity``           3            capacity and compression: population-loss students, the scaling family
``scaling_laws``       3            power laws in parameters, the Chinchilla arithmetic
``capacity_plots``     3            its figures
``rank``               4            the low-rank argument: rank of attention maps, collapse with depth
``rank_plots``         4            its figures and tables
``positions``          5            order without positions: probes, shuffles, NoPE vs RoPE runs
``signal_density``     6            signal density: Bayes-optimal losses, the label-density experiment
``equal_compute``      6            the objectives at equal compute; the masking-rate trade-off
``icl``                7            in-context learning: induction heads, decoder vs encoder
``dual_form``          7            in-context learning as gradient descent (linear attention's dual form)
``few_shot``           7            few-shot prompting of a pretrained decoder
``causal_kernel``      8            what a causal mask saves: attention pairs, tiles, timed kernels
``kv_cache``           9            the KV cache: sizes, multi-turn reuse, staleness of a bidirectional cache
``kv_cache_plots``     9            its figures and tables
``inference_economics`` 10          the roofline, latency models, classifiers' cost
``inference_economics_plots`` 10    its figures and tables
``experts``            11           mixture of experts: routing statistics, matched dense vs MoE runs
``record``             12           the published record: tables, shapes, cache bytes by family
``record_runs``        12           the record's measurements: exposure bias, budgets, embeddings
``answer``             the answer   the conclusions and the claims behind them
``parallel``           3, 6, 7, 12  independent training runs in forked processes, one per core
=====================  ===========  =================================================================
"""
