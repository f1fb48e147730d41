from __future__ import annotations

import click

from tuoba.cli import App
from tuoba.recipe import load_recipe, recipe_names


@click.command("recipes")
@click.pass_obj
def command(app: App) -> None:
    """List the recipes, one line each: name, what each stage installs, description.

    s1: Debian packages in stage 1; s2: packages built from source by LLVM against musl
    in stage 2 ("-" when the recipe has no stage-2 form).
    """
    for name in recipe_names(app.data_dir):
        recipe, _ = load_recipe(app.data_dir, name)
        s1 = f"s1: {len(recipe.stage1.packages)} pkgs"
        s2 = "s2: -" if recipe.stage2 is None else f"s2: {len(recipe.stage2.builds)} builds"
        click.echo(f"{name:<12} {s1:<13} {s2:<13} {recipe.description}")
