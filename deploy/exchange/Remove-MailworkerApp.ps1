#Requires -Version 7.4
#Requires -Modules ExchangeOnlineManagement
<#
.SYNOPSIS
    Offboards a mailworker integrating application: removes its Exchange role assignment(s), management
    scope and Exchange service principal, optionally clears the mailbox marker attribute, and optionally
    deletes the Entra app registration.

.DESCRIPTION
    Order matters: the role assignment goes first (it is what grants Mail.Send), then the scope (only if
    no other assignment uses it), then the Exchange service principal.
    Idempotent: whatever is already gone is reported and skipped. -WhatIf shows every step; each removal
    asks for confirmation unless -Confirm:$false.

    PROPAGATION: removing the assignment stops real Graph sendMail calls only after 30 minutes to 2 hours
    (Exchange permission cache). To stop sending AT ONCE, also cut the credential in Entra ID: remove the
    app's certificates (../entra/Update-MailworkerCertificate.ps1 -Remove -Force) or disable the
    enterprise application (Update-MgServicePrincipal -ServicePrincipalId <id> -AccountEnabled:$false), and
    remove the profile from the mailworker config. Access tokens already issued stay valid until they
    expire (about 1 hour).

    -RemoveEntraApp deletes the app registration (and with it the service principal) via Microsoft Graph
    (Application.ReadWrite.All; Application Administrator). It stays restorable from "Deleted applications"
    for 30 days.

.PARAMETER AppName
    mailworker app name.
.PARAMETER ClearMailboxAttribute
    Also clear AttributeName on mailboxes that carry 'mailworker-<AppName>'.
.PARAMETER AttributeName
    The custom attribute used by Grant-MailworkerMailboxScope.ps1 (default CustomAttribute15).
.PARAMETER RemoveEntraApp
    Also delete the Entra app registration 'mailworker-<AppName>'.
.PARAMETER Environment
    Microsoft cloud of the Entra tenant for -RemoveEntraApp: Global, USGov, USGovDoD, China.

.EXAMPLE
    ./Remove-MailworkerApp.ps1 -AppName billing -ClearMailboxAttribute -WhatIf
.EXAMPLE
    ./Remove-MailworkerApp.ps1 -AppName billing -ClearMailboxAttribute -RemoveEntraApp
#>
[CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'High')]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$')]
    [string] $AppName,

    [switch] $ClearMailboxAttribute,

    [ValidateSet('CustomAttribute1', 'CustomAttribute2', 'CustomAttribute3', 'CustomAttribute4', 'CustomAttribute5',
        'CustomAttribute6', 'CustomAttribute7', 'CustomAttribute8', 'CustomAttribute9', 'CustomAttribute10',
        'CustomAttribute11', 'CustomAttribute12', 'CustomAttribute13', 'CustomAttribute14', 'CustomAttribute15')]
    [string] $AttributeName = 'CustomAttribute15',

    [switch] $RemoveEntraApp,

    [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')]
    [string] $Environment = 'Global',

    [string] $Organization
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerExchange.psm1') -Force
Connect-MailworkerExchange -Organization $Organization
$n = Get-MailworkerNames -AppName $AppName

$sp = Get-ServicePrincipal -Identity $n.ServicePrincipal -ErrorAction SilentlyContinue

# 1. Role assignments: by name, and any other assignment held by this service principal.
$assignments = @(Get-ManagementRoleAssignment -Identity $n.Assignment -ErrorAction SilentlyContinue)
# Draft delivery mode's "Application Mail.ReadWrite" in the same scope.
$assignments += @(Get-ManagementRoleAssignment -Identity $n.DraftAssignment -ErrorAction SilentlyContinue)
if ($sp) {
    # RoleAssigneeName/RoleAssignee formats for apps: match on every id we know (verify in your tenant).
    $assignments += @(Get-ManagementRoleAssignment -ErrorAction SilentlyContinue |
        Where-Object { "$($_.RoleAssigneeType)" -eq 'ServicePrincipal' } |
        Where-Object { $_.RoleAssigneeName -in @($sp.Identity, $sp.DisplayName, $sp.ObjectId, $sp.AppId) -or $_.RoleAssignee -in @($sp.Identity, $sp.ObjectId) })
}
$assignments = @($assignments | Where-Object { $_ } | Sort-Object Name -Unique)
if (-not $assignments) { Write-Host "No role assignment for '$($n.ServicePrincipal)' (already removed)." }
foreach ($a in $assignments) {
    if ($PSCmdlet.ShouldProcess($a.Name, "Remove-ManagementRoleAssignment (role $($a.Role), scope $($a.CustomResourceScope))")) {
        Remove-ManagementRoleAssignment -Identity $a.Identity -Confirm:$false
        Write-Host "Removed role assignment '$($a.Name)'."
    }
}

# 2. Management scope, unless something else still uses it.
$scope = Get-ManagementScope -Identity $n.Scope -ErrorAction SilentlyContinue
if (-not $scope) { Write-Host "Management scope '$($n.Scope)' does not exist (already removed)." }
else {
    $removed = @($assignments | ForEach-Object { $_.Name }) # not $assignments.Name: it may be empty (strict mode)
    $users = @(Get-ManagementRoleAssignment -ErrorAction SilentlyContinue | Where-Object { $_.CustomResourceScope -eq $n.Scope -and $_.Name -notin $removed })
    if ($users) { Write-Warning "Scope '$($n.Scope)' is still used by: $(($users | ForEach-Object { $_.Name }) -join ', '). Not removed." }
    elseif ($PSCmdlet.ShouldProcess($n.Scope, 'Remove-ManagementScope')) {
        Remove-ManagementScope -Identity $n.Scope -Confirm:$false
        Write-Host "Removed management scope '$($n.Scope)'."
    }
}

# 3. Exchange service principal.
if (-not $sp) { Write-Host "Exchange service principal '$($n.ServicePrincipal)' does not exist (already removed)." }
elseif ($PSCmdlet.ShouldProcess($n.ServicePrincipal, 'Remove-ServicePrincipal')) {
    Remove-ServicePrincipal -Identity $sp.Identity -Confirm:$false
    Write-Host "Removed Exchange service principal '$($n.ServicePrincipal)'."
}

# 4. Mailbox marker attribute.
if ($ClearMailboxAttribute) {
    $marked = @(Get-Mailbox -ResultSize Unlimited -Filter "$AttributeName -eq '$($n.AttributeValue)'")
    if (-not $marked) { Write-Host "No mailbox carries $AttributeName = '$($n.AttributeValue)'." }
    foreach ($m in $marked) {
        if ($PSCmdlet.ShouldProcess($m.PrimarySmtpAddress, "Clear $AttributeName")) {
            $p = @{ Identity = $m.Identity; $AttributeName = $null }
            Set-Mailbox @p
            Write-Host "Cleared $AttributeName on $($m.PrimarySmtpAddress)."
        }
    }
}

# 5. Entra app registration.
if ($RemoveEntraApp) {
    Import-Module Microsoft.Graph.Applications -ErrorAction Stop
    Import-Module (Join-Path $PSScriptRoot '..' 'entra' 'MailworkerEntra.psm1') -Force
    Connect-MailworkerGraph -Scopes 'Application.ReadWrite.All' -Environment $Environment | Out-Null
    $app = Get-MailworkerApplication -DisplayName $n.ServicePrincipal
    if (-not $app) { Write-Host "App registration '$($n.ServicePrincipal)' does not exist (already removed)." }
    elseif ($PSCmdlet.ShouldProcess("$($n.ServicePrincipal) ($($app.AppId))", 'Delete Entra app registration (restorable for 30 days)')) {
        Remove-MgApplication -ApplicationId $app.Id
        Write-Host "Deleted app registration '$($n.ServicePrincipal)'."
    }
}

Write-Host ''
Write-Host (Get-MailworkerPropagationNote)
Write-Host 'Also: remove the profile from the mailworker config and its key from Secret mailworker-credentials, and purge or replay its dead letters (mailworker dlq list --profile <profile>).'
