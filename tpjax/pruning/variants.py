"""A method's named variants: one config field picks a value for every choice that the
config leaves None; a choice set explicitly wins (ltp_variant.py, top.py)."""

import ml_collections


def check(field: str, variant: str, variants: tuple) -> str:
  """`variant` if it is one of `variants`, else ValueError naming `field`."""
  if variant not in variants:
    raise ValueError(f"pruning.{field} {variant!r} is not one of {variants}.")
  return variant


def resolve(pruning: ml_collections.ConfigDict, variant: str, choices: dict,
            allowed: dict) -> dict:
  """{choice: its effective value}: explicit, else `choices[choice][variant]`.

  Raises:
    ValueError: for a value outside `allowed[choice]`.
  """
  values = {}
  for name, by_variant in choices.items():
    value = pruning.get(name)
    values[name] = by_variant[variant] if value is None else value
    if name in allowed and values[name] not in allowed[name]:
      raise ValueError(f"pruning.{name} {values[name]!r} is not one of {allowed[name]}.")
  return values


def complete(config: ml_collections.ConfigDict, variant: str, values: dict,
             stages: tuple, stage_choices: dict) -> None:
  """Writes the resolved `values` into config.pruning and every None optimiser choice
  of `stages` into config.stage_settings, so config.json records exactly what ran."""
  for name, value in values.items():
    config.pruning[name] = value
  for stage in stages:
    settings = config.stage_settings[stage]
    for name, by_variant in stage_choices.items():
      if settings.get(name) is None:
        settings[name] = by_variant[variant]
