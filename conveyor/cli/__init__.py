"""The ``conveyor`` command line (click).

``main.py`` holds the group, the shared ``-A``/``--broker`` options and the one place
errors become one-line messages; each command group has its own module and stays a
thin layer over the app and broker methods the dashboard calls too.
"""
