#Requires -Version 7.4
#Requires -Modules Microsoft.Graph.Authentication, Microsoft.Graph.Applications
<#
.SYNOPSIS
    Creates (or completes) the Entra ID app registration of ONE integrating application for mailworker:
    app registration "mailworker-<AppName>", a certificate credential, and its service principal
    (enterprise application). It grants NO Microsoft Graph permission.

.DESCRIPTION
    One app registration per integrating application (billing, hr, ...), so each has its own credential,
    its own sign-in log entries, its own mailbox scope and can be offboarded alone.

    Why no Mail.Send consent here (and why you must never click "Grant admin consent" for it):
    the permission to send is given by Exchange Online RBAC for Applications
    (deploy/exchange/Grant-MailworkerMailboxScope.ps1: role "Application Mail.Send" limited to a
    management scope of approved shared mailboxes). Exchange evaluates Entra ID consent and Exchange
    RBAC grants together and they ADD UP: an app that also holds the tenant-wide Graph Mail.Send
    application permission (an app role assignment made by admin consent) can send as ANY mailbox in
    the tenant, whatever its RBAC scope says. So this script adds no requiredResourceAccess entry (which
    would invite an admin to consent in the portal), and stops if it finds a tenant-wide Mail.Send grant.
    Test-TenantWideMailSend.ps1 audits the whole tenant for such grants.

    Idempotent: re-running finds the existing app registration and service principal by display name /
    appId and only adds what is missing. A certificate with the same thumbprint is not added twice.
    -WhatIf shows what would change.

    Certificate: either upload the public part of a certificate you already have (-CertificatePath, .cer
    or .pem; from your CA or Key Vault), or let the script create a self-signed one (-CreateCertificate),
    which writes <name>-<date>.cer (uploaded) and <name>-<date>.pem (cert + private key, for the
    Kubernetes Secret mailworker-credentials key "<profile>.pem"). Without either, the app is created
    without a credential.

    Required Entra role: Application Administrator or Cloud Application Administrator (or owner of the
    app for re-runs). Delegated Graph scope: Application.ReadWrite.All.

.PARAMETER AppName
    Short name of the integrating application; also the mailworker profile name by convention.
    Lowercase letters, digits and dashes. The app registration is named "mailworker-<AppName>".
.PARAMETER CertificatePath
    Public certificate (.cer DER/PEM or .pem) to upload.
.PARAMETER CreateCertificate
    Create a self-signed certificate in -OutputDirectory.
.PARAMETER OutputDirectory
    Where -CreateCertificate writes files. Default: current directory.
.PARAMETER ValidityMonths
    Lifetime of a created certificate (1-24 months, default 12).
.PARAMETER Owner
    User principal names added as owners of the app registration (the team that runs the integration).
.PARAMETER TenantId
    Tenant to connect to (default: the one Connect-MgGraph picks).
.PARAMETER Environment
    Microsoft cloud: Global, USGov, USGovDoD, China. Must match the mailworker profile's "cloud".
.PARAMETER FederatedIssuer
    Azure Workload Identity instead of (or next to) a certificate: the cluster's OIDC issuer URL. Adds a
    federated identity credential with this issuer, -FederatedSubject, and the audience of -Environment:
    api://AzureADTokenExchange (Global), api://AzureADTokenExchangeUSGov (USGov, USGovDoD),
    api://AzureADTokenExchangeChina (China), as "Configure an application to trust a managed identity"
    lists them (https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).
    The mailworker profile's credential.federatedAudience defaults to the same value for its cloud.
.PARAMETER FederatedSubject
    Subject of the federated credential: the worker's service account. Default
    system:serviceaccount:mail:mailworker.

.EXAMPLE
    ./New-MailworkerApp.ps1 -AppName billing -CreateCertificate -OutputDirectory ./secrets -Owner ops@contoso.com
.EXAMPLE
    ./New-MailworkerApp.ps1 -AppName billing -CertificatePath ./billing.cer -WhatIf
.OUTPUTS
    An object with AppId (client id for the mailworker profile), ApplicationObjectId,
    ServicePrincipalObjectId (the ENTERPRISE APPLICATION object id, needed by New-ServicePrincipal in
    Exchange), TenantId, certificate thumbprint / expiry and the .pem path when created.
#>
[CmdletBinding(SupportsShouldProcess, DefaultParameterSetName = 'NoCertificate')]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$')]
    [string] $AppName,

    [Parameter(Mandatory, ParameterSetName = 'Upload')]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string] $CertificatePath,

    [Parameter(Mandatory, ParameterSetName = 'Create')]
    [switch] $CreateCertificate,

    [Parameter(ParameterSetName = 'Create')]
    [string] $OutputDirectory = (Get-Location).Path,

    [Parameter(ParameterSetName = 'Create')]
    [ValidateRange(1, 24)]
    [int] $ValidityMonths = 12,

    [ValidatePattern('^[^@\s]+@[^@\s]+$')]
    [string[]] $Owner = @(),

    [ValidatePattern('^[0-9a-fA-F-]{36}$')]
    [string] $TenantId,

    [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')]
    [string] $Environment = 'Global',

    [ValidatePattern('^https://\S+$')]
    [string] $FederatedIssuer,

    [ValidatePattern('^\S+$')]
    [string] $FederatedSubject = 'system:serviceaccount:mail:mailworker'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerEntra.psm1') -Force

$displayName = "mailworker-$AppName"
$scopes = @('Application.ReadWrite.All')
if ($Owner) { $scopes += 'User.ReadBasic.All' }
$ctx = Connect-MailworkerGraph -Scopes $scopes -TenantId $TenantId -Environment $Environment

# 1. App registration (single tenant, no redirect URIs, no API permissions: see .DESCRIPTION).
$app = Get-MailworkerApplication -DisplayName $displayName
if ($app) {
    Write-Host "App registration '$displayName' exists (appId $($app.AppId))."
    $consentBait = $app.RequiredResourceAccess | Where-Object { $_.ResourceAppId -eq '00000003-0000-0000-c000-000000000000' }
    if ($consentBait) {
        Write-Warning "'$displayName' lists Microsoft Graph API permissions (requiredResourceAccess). They grant nothing by themselves, but an admin clicking 'Grant admin consent' would grant them tenant-wide. Remove them unless they are needed for something else."
    }
}
elseif ($PSCmdlet.ShouldProcess($displayName, 'Create app registration')) {
    $app = New-MgApplication -DisplayName $displayName -SignInAudience 'AzureADMyOrg' `
        -Notes 'mailworker: sends mail via Microsoft Graph. Mail.Send is granted ONLY by Exchange Online RBAC for Applications, scoped to approved shared mailboxes. Do NOT grant admin consent for Mail.Send: consent and RBAC add up and a tenant-wide grant defeats the scope.' `
        -Tags @('mailworker', "mailworker-profile:$AppName")
    Write-Host "Created app registration '$displayName' (appId $($app.AppId))."
}

# 2. Owners.
if ($app -and $Owner) {
    Import-Module Microsoft.Graph.Users -ErrorAction Stop # Get-MgUser
    $ownerIds = @(Get-MgApplicationOwner -ApplicationId $app.Id -All -ErrorAction SilentlyContinue | ForEach-Object { $_.Id })
    # directoryObjects URL of this cloud's Graph (graph.microsoft.us for US Gov, ...).
    $graphEndpoint = (Get-MgEnvironment | Where-Object { $_.Name -eq $ctx.Environment } | Select-Object -First 1).GraphEndpoint
    if (-not $graphEndpoint) { $graphEndpoint = 'https://graph.microsoft.com' }
    foreach ($upn in $Owner) {
        $user = Get-MgUser -UserId $upn -ErrorAction SilentlyContinue
        if (-not $user) { Write-Warning "Owner $upn not found; skipped."; continue }
        if ($ownerIds -contains $user.Id) { continue }
        if ($PSCmdlet.ShouldProcess($displayName, "Add owner $upn")) {
            New-MgApplicationOwnerByRef -ApplicationId $app.Id -OdataId "$graphEndpoint/v1.0/directoryObjects/$($user.Id)"
            Write-Host "Added owner $upn."
        }
    }
}

# 3. Certificate credential.
$created = $null
$cert = $null
switch ($PSCmdlet.ParameterSetName) {
    'Upload' { $cert = Read-MailworkerCertificate -Path $CertificatePath }
    'Create' {
        $created = New-MailworkerCertificate -Name $displayName -OutputDirectory $OutputDirectory -ValidityMonths $ValidityMonths
        if ($created) { $cert = $created.Certificate }
    }
    default {
        if ($app -and -not @($app.KeyCredentials).Where({ $_ })) {
            Write-Warning "'$displayName' has no certificate. Add one with -CertificatePath or -CreateCertificate (or Update-MailworkerCertificate.ps1) before deploying."
        }
    }
}
if ($cert -and $app) { Add-MailworkerKeyCredential -Application $app -Certificate $cert }

# 3b. Federated identity credential (Azure Workload Identity), with the cloud's audience.
if ($FederatedIssuer -and $app) {
    $audience = Get-MailworkerFederatedAudience -Environment $Environment
    $existing = @(Get-MgApplicationFederatedIdentityCredential -ApplicationId $app.Id -All |
        Where-Object { $_.Issuer -eq $FederatedIssuer -and $_.Subject -eq $FederatedSubject })
    if ($existing) {
        if (@($existing[0].Audiences) -notcontains $audience) {
            Write-Warning ("The federated credential '$($existing[0].Name)' has audience '$(@($existing[0].Audiences) -join ',')', " +
                "not $audience, the audience of the $Environment cloud: Entra refuses the token exchange (AADSTS70021). Fix its audience.")
        }
        else { Write-Host "Federated credential for $FederatedSubject exists." }
    }
    elseif ($PSCmdlet.ShouldProcess($displayName, "Add federated credential (issuer $FederatedIssuer, subject $FederatedSubject, audience $audience)")) {
        $null = New-MgApplicationFederatedIdentityCredential -ApplicationId $app.Id -BodyParameter @{
            name      = "mailworker-$AppName-k8s"
            issuer    = $FederatedIssuer
            subject   = $FederatedSubject
            audiences = @($audience)
        }
        Write-Host "Added federated credential (audience $audience)."
    }
}

# 4. Service principal (enterprise application) in this tenant.
$sp = $null
if ($app) {
    $sp = Get-MgServicePrincipal -Filter "appId eq '$($app.AppId)'"
    if ($sp) {
        Write-Host "Service principal exists (object id $($sp.Id))."
    }
    elseif ($PSCmdlet.ShouldProcess($displayName, 'Create service principal (enterprise application)')) {
        $sp = New-MgServicePrincipal -AppId $app.AppId -Tags @('mailworker', 'HideApp')
        Write-Host "Created service principal (object id $($sp.Id))."
    }
}

# 5. Refuse a tenant-wide Mail.Send grant on this app.
if ($sp) {
    $graph = Get-GraphServicePrincipal
    $mailSend = Get-GraphAppRoleId -GraphServicePrincipal $graph -Permission 'Mail.Send'
    $grant = Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $sp.Id -All |
        Where-Object { $_.ResourceId -eq $graph.Id -and $_.AppRoleId -eq $mailSend }
    if ($grant) {
        Write-Error ("'$displayName' holds the TENANT-WIDE Microsoft Graph Mail.Send application permission (app role assignment $($grant.Id)). " +
            "It can send as every mailbox, whatever the Exchange RBAC scope says. Remove it: " +
            "Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $($sp.Id) -AppRoleAssignmentId $($grant.Id)") -ErrorAction Continue
    }
}

$result = [pscustomobject]@{
    DisplayName              = $displayName
    TenantId                 = $ctx.TenantId
    AppId                    = if ($app) { $app.AppId } else { $null }
    ApplicationObjectId      = if ($app) { $app.Id } else { $null }
    ServicePrincipalObjectId = if ($sp) { $sp.Id } else { $null }
    CertificateThumbprint    = if ($cert) { $cert.Thumbprint } else { $null }
    CertificateNotAfter      = if ($cert) { $cert.NotAfter.ToUniversalTime() } else { $null }
    PemPath                  = if ($created) { $created.PemPath } else { $null }
}
if ($app -and $sp) {
    Write-Host ''
    Write-Host 'Next steps:'
    Write-Host "  1. Exchange RBAC scope (Exchange admin; uses the ENTERPRISE APPLICATION object id, not the app registration object id):"
    Write-Host "     ../exchange/Grant-MailworkerMailboxScope.ps1 -AppName $AppName -AppId $($app.AppId) -ServicePrincipalObjectId $($sp.Id) -Mailbox <shared mailbox>..."
    Write-Host "  2. mailworker profile '$AppName': tenantId $($ctx.TenantId), clientId $($app.AppId)."
    if ($created) {
        Write-Host "  3. kubectl -n mail create secret generic mailworker-credentials --from-file=$AppName.pem=$($created.PemPath)   (then delete the local .pem)"
    }
}
$result
