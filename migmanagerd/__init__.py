"""migmanagerd: keep every GPU's MIG layout equal to the operator's selection."""

__version__ = "0.1.0"
