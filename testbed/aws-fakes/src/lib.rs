//! Test bed only: moto server control and execution stand-ins for CodeBuild and ECS.
