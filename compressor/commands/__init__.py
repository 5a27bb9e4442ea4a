"""CLI commands, one class per command (the optimum-cli pattern), registered in `COMMANDS`."""

from compressor.commands.compress import CompressCommand
from compressor.commands.inspect import InspectCommand
from compressor.commands.push import PushCommand
from compressor.commands.recipes import RecipesCommand

COMMANDS = [CompressCommand, InspectCommand, RecipesCommand, PushCommand]
