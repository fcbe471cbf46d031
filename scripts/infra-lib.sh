# shellcheck shell=bash
# The variables below are read by the scripts that source this file, not here:
# shellcheck disable=SC2034
# Shared by scripts/infra-deploy and scripts/infra-teardown: option parsing, tool checks and
# the names both scripts must agree on. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="$(basename "$0")"
STACK_NAME="${STACK_NAME:-hello-name}"
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
SERVICES=(name hello)
TEMPLATE="$ROOT/infra/parent.yml"

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# require_tools TOOL...: every missing tool is named with where to get it, then exit 1.
require_tools() {
  local tool missing=0
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    missing=1
    case "$tool" in
      aws) log "'aws' not found: install AWS CLI v2 (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)" ;;
      sam) log "'sam' not found: install AWS SAM CLI (https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/install-sam-cli.html, or pip install aws-sam-cli)" ;;
      docker) log "'docker' not found: install Docker Engine or Docker Desktop (https://docs.docker.com/get-docker/)" ;;
      *) log "'$tool' not found" ;;
    esac
  done
  ((missing == 0)) || die "missing tools, see above"
}

# parse_common_options "$@": --stack-name and --region; sets REST to the remaining arguments.
parse_common_options() {
  REST=()
  while (($# > 0)); do
    case "$1" in
      --stack-name) [[ $# -ge 2 ]] || die "--stack-name needs a value"; STACK_NAME="$2"; shift 2 ;;
      --region) [[ $# -ge 2 ]] || die "--region needs a value"; REGION="$2"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  # The stack name names the cluster, log groups and roles (EnvironmentName in the templates).
  [[ "$STACK_NAME" =~ ^[a-zA-Z][a-zA-Z0-9-]{0,30}$ ]] \
    || die "stack name '$STACK_NAME': 1 to 31 letters, digits and hyphens, starting with a letter"
}

# resolve_aws: region and account, or a clear error when the AWS CLI has no credentials.
resolve_aws() {
  if [[ -z "$REGION" ]]; then REGION="$(aws configure get region 2>/dev/null || true)"; fi
  [[ -n "$REGION" ]] || die "no AWS region: pass --region, or set AWS_REGION, or run 'aws configure'"
  ACCOUNT="$(aws sts get-caller-identity --query Account --output text 2>/dev/null)" \
    || die "the AWS CLI has no working credentials: run 'aws configure' or 'aws sso login'"
}

# repository SERVICE: the ECR repository of a service's image.
repository() { printf '%s/%s' "$(tr '[:upper:]' '[:lower:]' <<<"$STACK_NAME")" "$1"; }

# stack_status: the parent stack's status, empty when there is no such stack.
stack_status() {
  aws cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
    --query 'Stacks[0].StackStatus' --output text 2>/dev/null || true
}

# load_stack: reads the parent stack's status and parameters in one call: STACK_STATUS (empty
# when there is no such stack) and STACK_PARAMETERS (key -> value).
declare -A STACK_PARAMETERS=()
STACK_STATUS=""
load_stack() {
  local line key value first=1
  STACK_STATUS="" STACK_PARAMETERS=()
  while IFS= read -r line; do
    if ((first)); then STACK_STATUS="$line" first=0; continue; fi
    IFS=$'\t' read -r key value <<<"$line"
    if [[ -n "$key" && "$key" != None ]]; then STACK_PARAMETERS[$key]="$value"; fi
  done < <(aws cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
    --query 'Stacks[0].[StackStatus, Parameters[].[ParameterKey, ParameterValue]]' --output text 2>/dev/null || true)
}

# stack_parameter KEY: a parameter value of the parent stack (after load_stack), empty when
# missing.
stack_parameter() { printf '%s' "${STACK_PARAMETERS[$1]:-}"; }

# stack_resources STACK: "type<TAB>physical id" of every resource of the stack and, through
# list-stack-resources, of its nested stacks. Works in every stack state, failed creates
# included: unlike outputs, the resource list exists as soon as CloudFormation starts.
stack_resources() {
  local type id
  aws cloudformation list-stack-resources --region "$REGION" --stack-name "$1" \
    --query 'StackResourceSummaries[].[ResourceType, PhysicalResourceId]' --output text 2>/dev/null \
    | while IFS=$'\t' read -r type id; do
      [[ -n "$id" && "$id" != None ]] || continue
      printf '%s\t%s\n' "$type" "$id"
      if [[ "$type" == AWS::CloudFormation::Stack ]]; then stack_resources "$id"; fi
    done
}

# parent_parameters: the parameter names of the parent template, one a line.
parent_parameters() {
  awk '/^Parameters:/ { p = 1; next } /^[^ #]/ { p = 0 } p && /^  [A-Za-z0-9]+:$/ { sub(/:$/, ""); print $1 }' \
    "$TEMPLATE"
}

# parent_default KEY: the Default of a parameter of the parent template, quotes removed;
# empty when it has none.
parent_default() {
  awk -v key="$1" '
    /^Parameters:/ { p = 1; next }
    /^[^ #]/ { p = 0 }
    p && /^  [A-Za-z0-9]+:$/ { name = $1; sub(/:$/, "", name); next }
    p && name == key && /^    Default:/ { sub(/^    Default: */, ""); gsub(/^"|"$/, ""); print; exit }
  ' "$TEMPLATE"
}

# stack_output KEY: an output of the parent stack, empty when the stack or output is missing.
stack_output() {
  aws cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text 2>/dev/null \
    | sed 's/^None$//'
}
