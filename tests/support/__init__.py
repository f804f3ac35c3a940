"""Helpers shared by test modules (not tests themselves): trial configs, sweep specs and their
environment, and the loop callbacks that inject failures."""
