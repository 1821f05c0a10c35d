"""Synthetic tasks with known answers (:mod:`writelens.tasks.mqar`: multi-query associative recall)."""
