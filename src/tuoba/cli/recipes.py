from __future__ import annotations

import click

from tuoba.cli import App
from tuoba.recipe import load_recipe, recipe_names


@click.command("recipes")
@click.pass_obj
def command(app: App) -> None:
    """List the recipes (one line each: name, stage-1 package count, description)."""
    for name in recipe_names(app.data_dir):
        recipe, _ = load_recipe(app.data_dir, name)
        pkgs = f"{len(recipe.stage1.packages)} pkgs"
        click.echo(f"{name:<16} {pkgs:<9} {recipe.description}")
