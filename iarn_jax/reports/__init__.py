"""The paper's comparison (Table 2, Figures 3 and 4), above ``training/`` and ``evaluate/``.

* ``registry``: the methods by name (how to fit each one) and Table 2's list;
* ``runner``: fit + evaluate one method, the whole comparison, the per-method cache;
* ``tables``: markdown tables (best in bold, runner-up marked ``*``);
* ``figures``: Figure 3 (RMSE by minimum history length) and Figure 4 (IARN-Plain vs feature
  encoders): rows, tables' data and plots.

``experiments/reproduce.py`` is the command line over these modules.
"""
