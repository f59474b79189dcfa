"""Evaluation: multiple-choice scoring, judges of generated answers, the experiment runner."""
