"""CLI commands, one class per command (the optimum-cli pattern), registered in `COMMANDS`."""

from compressor.commands.compress import CompressCommand
from compressor.commands.distill import DistillCommand
from compressor.commands.evaluate import EvaluateCommand
from compressor.commands.inspect import InspectCommand
from compressor.commands.push import PushCommand
from compressor.commands.recipes import RecipesCommand
from compressor.commands.sweep import SweepCommand

COMMANDS = [CompressCommand, InspectCommand, RecipesCommand, EvaluateCommand, SweepCommand, DistillCommand,
            PushCommand]
